"""Every method in one place: what a method's name means wherever it is written.

A :class:`Method` is an estimator with some settings fixed, its default number of samples ``S``
(for the methods that have one), its protocol learning rate, its cost per step and the numbers it
adds to a run's metrics. The estimators, :func:`mapa_vae.experiment.run`, the bench and the CLI
all read :data:`METHODS`; a new method (or a new MAPA variant) is one entry there.

A method *label*, as the bench and the reports write it, is the name with its sample count
(``iwae-10``, ``prior-is-100``) or, for a MAPA method started from the true codes, the suffix
``-oracle`` (``mapa-oracle``): see :func:`parse_label` and :func:`label`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .estimators import (IWAEDensity, LaggingVAEDensity, MAPADensity, PriorISDensity,
                         VAEDensity)
from .objectives import diagnostic_points


def _mapa_metrics(estimator) -> dict:
    """MAPA's own numbers for a run: its bound (and, for atoms, the gap to ``log p̂``) over the
    training points (up to 2048; beyond, over :func:`~mapa_vae.objectives.diagnostic_points`,
    as many as ``bound_points`` says), its kernel's bandwidth, neighbours and truncation bound,
    and, where the codes start at the data's PPCA posterior, the p-value of the test that PPCA
    is the data's model (``None`` where the test does not apply)."""
    n, dim = estimator.X_fit_.shape
    points = None if n <= 2048 else diagnostic_points(n, dim)
    exact = estimator.bound_per_point(points=points)
    out = {"gap": float(exact["gap"].mean())} if "gap" in exact else {}
    if points is not None:
        out["bound_points"] = len(points)
    p = estimator.ppca_isotropy_pvalue_
    if p is not None:
        out["ppca_isotropy_pvalue"] = p if p == p else None  # NaN: not applicable
    return {**out, "bound": float(exact["bound"].mean()), "bandwidth": estimator.mapa_.bandwidth_,
            "n_neighbors": int(estimator.mapa_.neighbors_.shape[1]),
            "truncation_bound_max": float(estimator.mapa_.truncation_bound_.max())}


@dataclass(frozen=True)
class Method:
    """One method.

    ``estimator`` with ``settings`` fixed; ``samples``: the default ``S`` (``None``: the method
    has no sample count); ``learning_rate``: the protocol's peak Adam rate (cosine-annealed),
    by default the estimator's ``protocol_learning_rate``; ``cost(S)``: decoder and encoder
    passes per training point per step, relative, to schedule the longest runs first; ``bench_samples``: the sample counts the default bench runs (methods
    with ``S``), ``in_bench``: whether the default bench runs it; ``metrics(estimator)``: numbers
    the method adds to a run's metrics."""

    name: str
    estimator: type
    summary: str
    cost: Callable[[int | None], float]
    settings: dict = field(default_factory=dict)
    samples: int | None = None
    in_bench: bool = True
    bench_samples: tuple = ()
    metrics: Callable | None = None
    learning_rate: float | None = None

    def __post_init__(self):
        if self.learning_rate is None:  # frozen: set once, here
            object.__setattr__(self, "learning_rate", self.estimator.protocol_learning_rate)

    @property
    def family(self) -> str:
        """The estimator's method (``mapa`` for every MAPA variant)."""
        return self.estimator.method

    def make(self, **params):
        """The estimator, unfitted: this method's settings, its protocol learning rate and
        default ``S``, then ``params`` over them."""
        defaults = dict(self.settings, learning_rate=self.learning_rate)
        if self.samples is not None:
            defaults["n_samples"] = self.samples
        return self.estimator(**{**defaults, **params})

    def bench_labels(self) -> list[str]:
        """This method's labels in the default bench."""
        if not self.in_bench:
            return []
        return [f"{self.name}-{s}" for s in self.bench_samples] if self.samples else [self.name]


#: The methods, in report order.
METHODS = {m.name: m for m in [
    Method("mapa", MAPADensity, "MAPA: no encoder, a fixed index posterior from the data",
           cost=lambda s: 1, metrics=_mapa_metrics),
    Method("mapa-identity", MAPADensity, "MAPA with the identity as index posterior (no "
           "kernel smoothing; an ablation)", cost=lambda s: 1,
           settings={"weights": "identity"}, metrics=_mapa_metrics),
    Method("mapa-atoms", MAPADensity, "MAPA over a permutation of fixed atoms (the default "
           "at latent dimension 1 and 2)", cost=lambda s: 1,
           settings={"codes": "atoms"}, in_bench=False, metrics=_mapa_metrics),
    Method("mapa-gaussian", MAPADensity, "MAPA over learned Gaussian codes per index (the "
           "default above latent dimension 2)", cost=lambda s: 1,
           settings={"codes": "gaussian"}, in_bench=False, metrics=_mapa_metrics),
    Method("vae", VAEDensity, "the VAE: Gaussian encoder, one-sample ELBO",
           cost=lambda s: 2),
    Method("iwae", IWAEDensity, "IWAE with S importance samples", cost=lambda s: 1 + s,
           samples=10, bench_samples=(5, 10, 50)),
    Method("lagging", LaggingVAEDensity, "the lagging-encoder VAE (He et al., 2019)",
           cost=lambda s: 6),
    Method("prior-is", PriorISDensity, "S prior draws per step shared by the batch (an "
           "ablation)", cost=lambda s: s / 100, samples=100, bench_samples=(100,)),
]}

#: Every method name.
METHOD_NAMES = list(METHODS)

#: The default bench's method labels, in report order.
BENCH_LABELS = [label for m in METHODS.values() for label in m.bench_labels()]


def get(name: str) -> Method:
    """The method called ``name``; a ``ValueError`` naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {METHOD_NAMES}")
    return METHODS[name]


def family(name: str) -> str:
    """The estimator's method behind a method name (``mapa-atoms`` → ``mapa``)."""
    return get(name).family


def make_estimator(method: str, **params):
    """An estimator by method name (:data:`METHOD_NAMES`): the method's settings, protocol
    learning rate and default ``S``, with ``params`` over them."""
    return get(method).make(**params)


def label(method: str, samples: int | None = None, init: str = "auto") -> str:
    """A run's label: ``iwae-10`` (the method's default ``S`` if ``samples`` is ``None``),
    ``mapa-oracle`` for a MAPA method started from the true codes, else the name."""
    m = get(method)
    if m.samples is not None:
        return f"{method}-{samples or m.samples}"
    if m.family == "mapa" and init == "oracle":
        return f"{method}-oracle"
    return method


def parse_label(text: str) -> dict:
    """A label as run settings: ``"iwae-10"`` → ``{"method": "iwae", "samples": 10}``;
    ``"iwae"`` takes its default ``S``; ``"mapa-oracle"`` → ``{"method": "mapa", "init":
    "oracle"}``."""
    for m in METHODS.values():
        if m.samples is None:
            continue
        if text == m.name:
            return {"method": m.name, "samples": m.samples}
        if text.startswith(m.name + "-"):
            count = text[len(m.name) + 1:]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"method {text!r}: the number of samples after {m.name}- must "
                                 f"be a positive integer")
            return {"method": m.name, "samples": int(count)}
    if text.endswith("-oracle") and text[:-len("-oracle")] in METHODS \
            and METHODS[text[:-len("-oracle")]].family == "mapa":
        return {"method": text[:-len("-oracle")], "init": "oracle"}
    if text not in METHODS:
        with_samples = " or ".join(f"{m.name}-S" for m in METHODS.values() if m.samples)
        raise ValueError(f"unknown method {text!r}; choose from {', '.join(METHOD_NAMES)} "
                         f"(any {with_samples}), or a MAPA method with -oracle")
    return {"method": text}
