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
linear-gaussian N(0,I₈)  A z + b  (D = 64)                             0.3    A Q z + b, Q orthogonal
blobs           U[0,1]²  16 × 16 image, a Gaussian blob at z (below)   0.2    (z₁, z₂) ↦ (1 − z₁, 1 − z₂)
=============== ======== ============================================= ====== ======================

``clusters`` puts almost all mass on four centres 2.8 apart (28 σ) joined by thin bridges.

``linear-gaussian`` (:class:`~mapa_vae.ground_truth.LinearGaussian`, ``p(x) = N(b, A Aᵀ + σ² I)``
in closed form) has ``A = U diag(s) Vᵀ`` with ``U`` (64 × 8, orthonormal columns) and ``V``
(8 × 8, orthogonal) Haar-random, ``s`` geometric from 2 to 0.5 (condition number 4: every latent
direction is seen above the noise, the posterior is correlated in ``z``), ``b ~ N(0, 0.5² I)``,
and the twin's rotation ``Q`` Haar-random, all from the fixed seed 11
(:func:`linear_gaussian_parameters`).

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
bench's default datasets); ask for it by name. Nor is ``linear-gaussian``: each trained
model's marginal at ``d_z = 8`` goes through the importance-sampling evaluator.

A user's own ground truth lives in a Python file; ``"path/to/file.py:name"`` names an object in it
that is a :class:`~mapa_vae.GroundTruth` or a function of no arguments returning one. Its twin, if
asked for, is the object named ``name_twin``. Such a spec is accepted wherever a dataset name is.
In reports (results, tables, folder names) it goes by ``name`` (:func:`label`; :func:`labels`
adds the file where two datasets share a name). A file that fails to load is a ``ValueError``
naming the file and the error.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from .ground_truth import GroundTruth, LinearGaussian

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


def _haar_orthogonal(rng, rows: int, cols: int) -> np.ndarray:
    """A ``rows × cols`` matrix with Haar-random orthonormal columns (QR with signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def linear_gaussian_parameters(latent_dim: int = 8, data_dim: int = 64, seed: int = 11):
    """``(A, b, Q)`` of the built-in linear-Gaussian family (module docstring)."""
    rng = np.random.default_rng(seed)
    U = _haar_orthogonal(rng, data_dim, latent_dim)
    V = _haar_orthogonal(rng, latent_dim, latent_dim)
    A = U @ np.diag(np.geomspace(2.0, 0.5, latent_dim)) @ V.T
    b = 0.5 * rng.standard_normal(data_dim)
    return A, b, _haar_orthogonal(rng, latent_dim, latent_dim)


def _linear_gaussian(twin: bool) -> GroundTruth:
    A, b, Q = linear_gaussian_parameters()
    truth = LinearGaussian(A, b, sigma=0.3, name="linear-gaussian")
    return truth.rotated(Q) if twin else truth


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
    "linear-gaussian": _linear_gaussian,
    "blobs": _blobs,
}

#: Built-in datasets that :func:`names` lists only when asked (``names(include_all=True)``),
#: so that the bench runs them only when named: scoring them is slow (``blobs``: quadrature in
#: ``D = 256``; ``linear-gaussian``: every model's ``d_z = 8`` marginal by the evaluator).
NOT_DEFAULT = {"blobs", "linear-gaussian"}


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
    "linear-gaussian": lambda z: z @ torch.from_numpy(linear_gaussian_parameters()[2]),
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


def is_file_spec(name) -> bool:
    """Whether ``name`` is a ``"path/to/file.py:object"`` spec (rather than a built-in name)."""
    return isinstance(name, str) and ".py:" in name


def label(name: str, twin: bool = False) -> str:
    """The name a dataset goes by in reports: a built-in's own name; for
    ``"path/to/file.py:x"`` the object's name ``x``, or ``"file.py:x"`` where ``x`` is also a
    built-in's name. A twin adds ``" (twin)"``."""
    if is_file_spec(name):
        path_text, _, object_name = name.rpartition(":")
        text = f"{Path(path_text).name}:{object_name}" if object_name in BUILT_IN else object_name
    else:
        text = name
    return f"{text} (twin)" if twin else text


def labels(names: list[str]) -> dict[str, str]:
    """Distinct report names for several dataset specs (see :func:`label`), by spec: where two
    file datasets share an object name each is ``"file.py:x"``, and where those coincide too, the
    spec as given. A spec given twice is a ``ValueError``."""
    repeated = [name for name in dict.fromkeys(names) if list(names).count(name) > 1]
    if repeated:
        raise ValueError(f"dataset {repeated[0]!r} is given more than once")
    out = {name: label(name) for name in names}

    def with_file(spec: str) -> str:
        path_text, _, object_name = spec.rpartition(":")
        return f"{Path(path_text).name}:{object_name}"

    for qualify in (with_file, lambda spec: spec):
        taken: dict[str, list[str]] = {}
        for name, text in out.items():
            taken.setdefault(text, []).append(name)
        for group in taken.values():
            if len(group) > 1:
                out.update({spec: qualify(spec) for spec in group if is_file_spec(spec)})
    return out


def load_from_file(spec: str, twin: bool = False) -> GroundTruth:
    """Load ``"path/to/file.py:name"``: a GroundTruth, or a no-argument function returning one.

    A truth left with the default name ``"custom"`` is named by :func:`label`. Any error while
    the file runs (a syntax error, an exception inside, a failing ``GroundTruth``) or while the
    function is called is a ``ValueError`` naming the file and the error.
    """
    path_text, _, object_name = spec.rpartition(":")
    path = Path(path_text)
    if not object_name:
        raise ValueError(f"{spec!r} names no object; write 'path/to/file.py:object'")
    if not path.is_file():
        raise ValueError(f"ground-truth file {str(path)!r} does not exist")
    attribute = f"{object_name}_twin" if twin else object_name
    module_spec = importlib.util.spec_from_file_location(f"_mapa_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        raise ValueError(f"ground-truth file {str(path)!r} failed to load: "
                         f"{_one_line(error)}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"{str(path)!r} defines no object named {attribute!r}")
    obj = getattr(module, attribute)
    if not isinstance(obj, GroundTruth) and callable(obj):
        try:
            obj = obj()
        except Exception as error:
            raise ValueError(f"{attribute}() in ground-truth file {str(path)!r} failed: "
                             f"{_one_line(error)}") from None
    if not isinstance(obj, GroundTruth):
        raise ValueError(f"{attribute!r} in {str(path)!r} is not a GroundTruth (nor a function "
                         f"returning one); got {type(obj).__name__}")
    if obj.name == "custom":
        obj.name = label(spec, twin)
    obj.source = str(path)
    return obj


def _one_line(error: BaseException) -> str:
    """``"SomeError: message"`` on one line (a syntax error with its line number)."""
    if isinstance(error, SyntaxError) and error.lineno is not None:
        text = f"{error.msg} (line {error.lineno})"
    else:
        text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
