"""Built-in ground-truth families, each with a non-identifiable twin, and user-defined ones.

Every family is ``(prior, f, σ)``; its twin is ``f ∘ T`` for a map ``T`` that preserves the prior,
so model and twin share ``p(x)`` but not ``p(z | x)``. With ``t = Φ(z)`` for a standard normal:

=============== ======== ============================================= ====== ======================
name            prior    f                                              σ      twin
=============== ======== ============================================= ====== ======================
quadratic       U[0,1]   (0.5 − z)²                                     0.02   0.25 z²
absolute-value  N(0,1)   |z|                                            0.1    Φ⁻¹((Φ(z) + 1)/2)
circle          N(0,1)   (cos 2πt, sin 2πt)                             0.1    t ↦ t + ¼ (mod 1)
spiral          N(0,1)   (0.3 + t)(cos 3πt, sin 3πt)                    0.05   f(−z)
figure-8        N(0,1)   (cos 2πt, ½ sin 4πt)  (lemniscate of Gerono)   0.05   f(−z)
clusters        N(0,1)   2 (cos ½πs, sin ½πs), s = Σ_{j=1}^{3} σ((t − j/4)/0.01)   0.1    f(−z)
swiss-roll      U[0,1]²  (φ cos φ / 10, 2 z₂, φ sin φ / 10), φ = 1.5π(1 + 2 z₁)   0.05   (z₁, z₂) ↦ (1 − z₁, 1 − z₂)
blobs           U[0,1]²  16 × 16 image, a Gaussian blob at z (below)   0.2    (z₁, z₂) ↦ (1 − z₁, 1 − z₂)
=============== ======== ============================================= ====== ======================

``clusters`` puts almost all mass on four centres 2.8 apart (28 σ) joined by thin bridges.

``blobs`` is a high-dimensional ground truth (``D = 256``, ``d_z = 2``): pixel ``(i, j)`` of a
16 × 16 image, at ``x[16 i + j]``, is ``exp(−((u_i − z₁)² + (u_j − z₂)²) / (2 w²))`` with pixel
centres ``u_i = (i + ½)/16`` and width ``w = 0.1`` (1.6 pixels, so ``f`` is smooth in the position
rather than pixelated), plus noise ``σ = 0.2`` on every pixel. The blob's position is known to
about ``σ / √(Σ_pixels (∂f/∂z₁)²) ≈ σ / √(128π) ≈ 0.01`` (a sixth of a pixel) in the interior:
the codes are well determined, while the per-image noise (norm ``16 σ = 3.2``) exceeds the blob
itself (norm ``√(256π) w ≈ 2.8``). ``σ`` is as large as that on purpose: the quadrature's error
comes from posteriors cut by the edges of the unit square, and it falls as the posterior widens;
with the 256² default grid, against 512², it is below 0.006 nats per point at ``σ = 0.2``
(0.011 at ``σ = 0.15``, 0.024 at ``σ = 0.1``; means 8e-5 to 2e-4; 1000 points each, see
``benchmarks/quadrature_accuracy.py``). The twin ``f(1 − z)`` is the image turned by 180° (the
pixel grid is symmetric), a different image for every ``z ≠ (½, ½)``; ``z ↦ 1 − z`` preserves
``U[0,1]²`` with ``|det| = 1``, so ``p_twin(x) = p(x)`` and ``p_twin(z | x) = p(1 − z | x)``. It
also maps the equal-mass grid onto itself, so both quadratures sum the same terms. Its quadrature
costs about 25 s per 1000 points on one core, so it is not among the default :func:`names` (the
bench's default datasets); ask for it by name.

A user's own ground truth lives in a Python file; ``"path/to/file.py:name"`` names an object in it
that is a :class:`~mapa_vae.GroundTruth` or a function of no arguments returning one. Its twin, if
asked for, is the object named ``name_twin``. Such a spec is accepted wherever a dataset name is.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from .ground_truth import GroundTruth

_ndtr, _ndtri = torch.special.ndtr, torch.special.ndtri


def _quadratic(twin: bool) -> GroundTruth:
    f = (lambda z: 0.25 * z**2) if twin else (lambda z: (0.5 - z) ** 2)
    return GroundTruth("uniform", f, sigma=0.02, name="quadratic")


def _absolute_value(twin: bool) -> GroundTruth:
    f = (lambda z: _ndtri(0.5 * (_ndtr(z) + 1.0))) if twin else torch.abs
    return GroundTruth("normal", f, sigma=0.1, name="absolute-value")


def _circle(twin: bool) -> GroundTruth:
    shift = 0.25 if twin else 0.0

    def f(z):
        angle = 2 * math.pi * torch.remainder(_ndtr(z) + shift, 1.0)
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)

    return GroundTruth("normal", f, sigma=0.1, name="circle")


def _flip_if(twin: bool, g):
    """``f(z) = g(Φ(z))``, or ``f(−z) = g(1 − Φ(z))`` for the twin."""
    return (lambda z: g(_ndtr(-z))) if twin else (lambda z: g(_ndtr(z)))


def _spiral(twin: bool) -> GroundTruth:
    def g(t):
        return (0.3 + t) * torch.cat([torch.cos(3 * math.pi * t), torch.sin(3 * math.pi * t)], 1)

    return GroundTruth("normal", _flip_if(twin, g), sigma=0.05, name="spiral")


def _figure_8(twin: bool) -> GroundTruth:
    def g(t):
        return torch.cat([torch.cos(2 * math.pi * t), 0.5 * torch.sin(4 * math.pi * t)], 1)

    return GroundTruth("normal", _flip_if(twin, g), sigma=0.05, name="figure-8")


def _clusters(twin: bool) -> GroundTruth:
    def g(t):
        steps = sum(torch.sigmoid((t - j / 4) / 0.01) for j in (1, 2, 3))
        angle = 0.5 * math.pi * steps
        return 2.0 * torch.cat([torch.cos(angle), torch.sin(angle)], 1)

    return GroundTruth("normal", _flip_if(twin, g), sigma=0.1, name="clusters")


def _swiss_roll(twin: bool) -> GroundTruth:
    def f(z):
        if twin:
            z = 1.0 - z
        phi = 1.5 * math.pi * (1 + 2 * z[:, :1])
        return torch.cat([phi * torch.cos(phi) / 10, 2 * z[:, 1:], phi * torch.sin(phi) / 10], 1)

    return GroundTruth("uniform", f, sigma=0.05, latent_dim=2, name="swiss-roll")


def _blobs(twin: bool) -> GroundTruth:
    centres, width = (torch.arange(16, dtype=torch.float64) + 0.5) / 16, 0.1

    def f(z):
        if twin:
            z = 1.0 - z
        rows = torch.exp(-(centres - z[:, :1]) ** 2 / (2 * width**2))  # (n, 16): over i
        cols = torch.exp(-(centres - z[:, 1:]) ** 2 / (2 * width**2))  # (n, 16): over j
        return (rows[:, :, None] * cols[:, None, :]).flatten(1)

    truth = GroundTruth("uniform", f, sigma=0.2, latent_dim=2, name="blobs")
    truth.image_shape = (16, 16)  # figures draw its data as images
    return truth


BUILT_IN = {
    "quadratic": _quadratic,
    "absolute-value": _absolute_value,
    "circle": _circle,
    "spiral": _spiral,
    "figure-8": _figure_8,
    "clusters": _clusters,
    "swiss-roll": _swiss_roll,
    "blobs": _blobs,
}

#: Built-in datasets that :func:`names` lists only when asked (``names(include_all=True)``),
#: so that the bench runs them only when named: their quadrature is slow (``D = 256``).
NOT_DEFAULT = {"blobs"}


def _circle_codes(z):
    return _ndtri(torch.remainder(_ndtr(z) - 0.25, 1.0).clamp(1e-15, 1 - 1e-15))


#: For each built-in family (f, twin f ∘ T), the map ``z ↦ z'`` from a point's code under the
#: model to its code under the twin, with ``f_twin(z') = f(z)``: the same data, other codes.
TWIN_CODES = {
    "quadratic": lambda z: 2.0 * torch.abs(0.5 - z),
    "absolute-value": lambda z: _ndtri((2.0 * _ndtr(torch.abs(z)) - 1.0).clamp_min(1e-300)),
    "circle": _circle_codes,
    "spiral": torch.neg,
    "figure-8": torch.neg,
    "clusters": torch.neg,
    "swiss-roll": lambda z: 1.0 - z,
    "blobs": lambda z: 1.0 - z,
}


def twin_codes(name: str, Z):
    """Codes under the twin of the built-in family ``name`` for points with codes ``Z`` under the
    model: ``f_twin(twin_codes(Z)) = f(Z)``. Shape ``(n, latent_dim)``, float64."""
    if name not in TWIN_CODES:
        raise ValueError(f"twin codes are known for the built-in datasets "
                         f"{names(include_all=True)}, not {name!r}")
    return TWIN_CODES[name](torch.as_tensor(Z, dtype=torch.float64)).numpy()


def names(include_all: bool = False) -> list[str]:
    """The built-in dataset names: the default ones (the bench's default list), or with
    ``include_all`` also those in :data:`NOT_DEFAULT`."""
    return [name for name in BUILT_IN if include_all or name not in NOT_DEFAULT]


def get(name: str, twin: bool = False) -> GroundTruth:
    """A ground truth by built-in name, or from ``"path/to/file.py:object"``.

    ``twin=True`` gives the non-identifiable twin: same ``p(x)``, different ``p(z | x)``.
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset must be a name or 'file.py:object', got {name!r}")
    if ".py:" in name:
        return load_from_file(name, twin=twin)
    if name not in BUILT_IN:
        raise ValueError(f"unknown dataset {name!r}; built-in datasets are "
                         f"{names(include_all=True)}, or give "
                         f"'path/to/file.py:object'")
    truth = BUILT_IN[name](bool(twin))
    if twin:
        truth.name = f"{name} (twin)"
    return truth


def load_from_file(spec: str, twin: bool = False) -> GroundTruth:
    """Load ``"path/to/file.py:name"``: a GroundTruth, or a no-argument function returning one."""
    path_text, _, object_name = spec.rpartition(":")
    path = Path(path_text)
    if not object_name:
        raise ValueError(f"{spec!r} names no object; write 'path/to/file.py:object'")
    if not path.is_file():
        raise ValueError(f"ground-truth file {str(path)!r} does not exist")
    if twin:
        object_name = f"{object_name}_twin"
    module_spec = importlib.util.spec_from_file_location(f"_mapa_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, object_name):
        raise ValueError(f"{str(path)!r} defines no object named {object_name!r}")
    obj = getattr(module, object_name)
    truth = obj if isinstance(obj, GroundTruth) else (obj() if callable(obj) else obj)
    if not isinstance(truth, GroundTruth):
        raise ValueError(f"{object_name!r} in {str(path)!r} is not a GroundTruth (nor a function "
                         f"returning one); got {type(truth).__name__}")
    return truth
