"""The image ground truth ``blobs``: a Gaussian blob on a 16 × 16 grid, its twin, its quadrature.

``f(z)[16 i + j] = exp(−((u_i − z₁)² + (u_j − z₂)²) / (2 w²))``, ``u_i = (i + ½)/16``, ``w = 0.1``,
``z ~ U[0,1]²``, ``σ = 0.2``; the twin is ``f(1 − z)`` (datasets.py).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mapa_vae import GroundTruth, datasets
from mapa_vae.bench import BenchConfig
from mapa_vae.cli import main
from mapa_vae.priors import Uniform

WIDTH, SIGMA, SIDE = 0.1, 0.2, 16
CENTRES = (np.arange(SIDE) + 0.5) / SIDE
EPS = np.finfo(np.float64).eps


def _images(Z: np.ndarray) -> np.ndarray:
    """The closed form, written independently of datasets.py: shape ``(n, 16, 16)``."""
    rows = np.exp(-(CENTRES[None, :] - Z[:, :1]) ** 2 / (2 * WIDTH**2))
    cols = np.exp(-(CENTRES[None, :] - Z[:, 1:]) ** 2 / (2 * WIDTH**2))
    return rows[:, :, None] * cols[:, None, :]


@pytest.mark.parametrize("twin", [False, True])
def test_constants(twin):
    truth = datasets.get("blobs", twin=twin)
    assert isinstance(truth, GroundTruth) and type(truth.prior) is Uniform
    assert (truth.data_dim, truth.latent_dim, truth.sigma) == (256, 2, SIGMA)
    assert truth.name == ("blobs (twin)" if twin else "blobs")


def test_reachable_by_name_but_not_in_the_default_list():
    assert "blobs" not in datasets.names() and "linear-gaussian" not in datasets.names()
    assert datasets.names(include_all=True) == datasets.names() + ["linear-gaussian", "blobs"]
    assert "blobs" not in BenchConfig().datasets
    runs = BenchConfig(datasets=["blobs"], methods=["mapa", "vae"], seeds=1).runs()
    assert [(r.dataset, r.method) for r in runs] == [("blobs", "mapa"), ("blobs", "vae")]
    with pytest.raises(ValueError, match=r"built-in datasets are \[.*'blobs'\]"):
        datasets.get("blob")


def test_decoder_closed_form_and_range():
    truth, twin = datasets.get("blobs"), datasets.get("blobs", twin=True)
    rng = np.random.default_rng(0)
    Z = np.vstack([rng.random((200, 2)), [[0, 0], [1, 1], [0, 1], [0.5, 0.5]]])
    images = truth.mean(Z).reshape(-1, SIDE, SIDE)
    # each pixel is a product of two exponentials, each within a few ulps: 1e-12 is ample
    np.testing.assert_allclose(images, _images(Z), rtol=1e-12, atol=0)
    assert (images > 0).all() and (images <= 1).all()
    # the brightest pixel is the one containing z; it is at most half a pixel away per axis,
    # so its value is at least exp(−2 (1/32)² / (2 w²))
    inside = Z[:200]  # random codes: none on a boundary between pixels
    flat = truth.mean(inside)
    np.testing.assert_array_equal(flat.argmax(1), (16 * np.floor(16 * inside[:, 0])
                                                   + np.floor(16 * inside[:, 1])).astype(int))
    assert flat.max(1).min() >= math.exp(-(1 / 32) ** 2 / WIDTH**2)
    # the twin's image is the model's turned by 180°; they differ except at the centre
    # (|Δ(1 − z)| ≤ ε and |∂f/∂z| ≤ 1/(w √e) < 7 bound the rounding by 1e-14)
    turned = twin.mean(Z).reshape(-1, SIDE, SIDE)
    np.testing.assert_allclose(turned, images[:, ::-1, ::-1], rtol=0, atol=1e-14)
    assert np.abs(turned - images).reshape(len(Z), -1).max(1)[:200].min() > 1e-3
    np.testing.assert_allclose(turned[-1], images[-1], rtol=0, atol=1e-14)


def test_decoder_is_smooth_with_the_documented_information():
    """∂f/∂z₁ = f · (u_i − z₁)/w² (autograd agrees), and Σ (∂f/∂z₁)² ≈ 128π at the centre: the
    posterior width σ/√(128π) that datasets.py states (a Riemann sum of a Gaussian with spacing
    1/16 < w: its relative error is below 1e-6; the blob's tails off the image, 5 w away,
    below 1e-9)."""
    truth = datasets.get("blobs")
    z = torch.tensor([[0.5, 0.5], [0.13, 0.71], [0.0, 1.0]], dtype=torch.float64,
                     requires_grad=True)
    f = truth.decode(z)
    grad_rows = torch.autograd.grad(f.sum(), z)[0].numpy()
    zn = z.detach().numpy()
    images = _images(zn)
    expected = np.stack([(images * (CENTRES[None, :, None] - zn[:, :1, None]) / WIDTH**2)
                         .sum((1, 2)),
                         (images * (CENTRES[None, None, :] - zn[:, 1:, None]) / WIDTH**2)
                         .sum((1, 2))], 1)
    np.testing.assert_allclose(grad_rows, expected, rtol=1e-10, atol=1e-12)
    dfdz1 = images[0] * (CENTRES[:, None] - 0.5) / WIDTH**2
    assert (dfdz1**2).sum() == pytest.approx(128 * math.pi, rel=1e-6)
    # the Jacobian is finite and bounded on the whole square, corners included
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 41), np.linspace(0, 1, 41)), -1).reshape(-1, 2)
    zg = torch.tensor(grid, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: truth.decode(v).sum(0), zg[:5])
    assert torch.isfinite(jac).all()
    step = 1e-6  # finite differences of f match the closed-form derivative to O(step)
    fd = (truth.mean(grid + [step, 0]) - truth.mean(grid - [step, 0])) / (2 * step)
    analytic = (_images(grid) * (CENTRES[None, :, None] - grid[:, :1, None])
                / WIDTH**2).reshape(len(grid), -1)
    # error: step² |f'''| / 6 + ε / step, with |f'''| ≤ 3 / w³ · e^{...} ≤ 3000
    np.testing.assert_allclose(fd, analytic, rtol=0, atol=3000 * step**2 / 6 + 4 * EPS / step)


def test_samples_shapes_range_and_noise():
    truth = datasets.get("blobs")
    X, Z = truth.sample(500, seed=3)
    assert X.shape == (500, 256) and Z.shape == (500, 2)
    assert ((Z >= 0) & (Z <= 1)).all() and np.isfinite(X).all()
    resid = X - truth.mean(Z)
    # 128 000 N(0, σ²) values: the sample sd's relative sd is 1/√(2 · 128 000) = 0.002
    assert resid.std() == pytest.approx(SIGMA, rel=0.01)
    assert abs(resid.mean()) < 5 * SIGMA / math.sqrt(resid.size)
    X2, Z2 = truth.sample(500, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(Z, Z2)


def test_twin_has_exactly_the_same_marginal():
    """z ↦ 1 − z maps the equal-mass grid ((m + ½)/256, exact in binary) onto itself, so the
    twin's quadrature sums the same terms in another order. Bound: each log-joint term carries
    ≤ D ε of its size (≈ D/2 near the mode: 3e-12), the sum of M = 65 536 terms ≤ M ε (7e-12)."""
    truth, twin = datasets.get("blobs"), datasets.get("blobs", twin=True)
    X = np.vstack([truth.sample(12, seed=0)[0], twin.sample(12, seed=1)[0]])
    lp, lp_twin = truth.log_prob(X), twin.log_prob(X)
    assert lp.shape == (24,) and np.isfinite(lp).all()
    np.testing.assert_allclose(lp_twin, lp, rtol=0, atol=1e-10)
    # not a triviality: the decoders differ on the same codes
    Z = truth.sample(24, seed=0)[1]
    assert np.abs(truth.mean(Z) - twin.mean(Z)).max() > 0.5


def test_twin_posterior_is_the_mirrored_one():
    truth, twin = datasets.get("blobs"), datasets.get("blobs", twin=True)
    X, Z = truth.sample(4, seed=5)
    codes = np.vstack([Z, np.random.default_rng(1).random((50, 2))])
    np.testing.assert_allclose(twin.log_posterior(X, codes), truth.log_posterior(X, 1 - codes),
                               rtol=1e-10, atol=1e-8)
    # the true code is likely under the model, not under the twin (unless near the centre)
    own = np.diag(truth.log_posterior(X, Z))
    under_twin = np.diag(twin.log_posterior(X, Z))
    far = np.abs(Z - 0.5).max(1) > 0.1
    assert far.any() and (own[far] - under_twin[far] > 50).all()


def test_twin_codes_give_the_same_images():
    truth, twin = datasets.get("blobs"), datasets.get("blobs", twin=True)
    _, Z = truth.sample(300, seed=0)
    Z_twin = datasets.twin_codes("blobs", Z)
    # |Δz| ≤ ε after 1 − (1 − z); |∂f/∂z| < 7
    np.testing.assert_allclose(twin.mean(Z_twin), truth.mean(Z), rtol=0, atol=1e-14)
    assert ((Z_twin >= 0) & (Z_twin <= 1)).all() and not np.allclose(Z_twin, Z)


def test_quadrature_against_a_finer_grid():
    """256² nodes against 512². Inside the square the posterior (sd s ≥ σ/√(128π) ≈ 0.0099,
    2.5 cells of 1/256) is a smooth bump whose derivatives vanish at both ends: the midpoint
    rule's error is about 2 exp(−2π² s² / h²) ≈ e^{−126}, so only rounding remains (M ε ≈ 3e-11
    for 512² terms). Where the edge cuts the posterior, Euler–Maclaurin leaves (h²/24)|g'|/∫g
    per axis; with the mode at most one s outside, |g'|/∫g ≤ 1.5/s² (the inverse Mills ratio),
    so ≤ 1.5 / (24 · 256² · 0.0099²) ≈ 0.01 nats, the documented accuracy."""
    truth = datasets.get("blobs")
    interior = np.array([[0.5, 0.5], [0.3, 0.7], [0.62, 0.25]])
    edge = np.array([[0.01, 0.5], [0.5, 0.99], [0.0, 0.0], [-0.01, 0.5]])
    noise = SIGMA * np.random.default_rng(0).standard_normal((2, 256))
    X = np.vstack([truth.mean(interior), truth.mean(interior[:2]) + noise, truth.mean(edge)])
    coarse = truth.log_prob(X)
    truth.nodes_per_dim = 512
    fine = truth.log_prob(X)
    diff = np.abs(coarse - fine)
    assert diff[:5].max() < 1e-9
    assert diff[5:].max() < 0.01
    assert diff[5:].min() > 1e-6  # the edge does cost accuracy: the test can tell


def test_fit_on_the_twin_from_the_command_line(tmp_path):
    out = tmp_path / "fit"
    assert main(["fit", "--dataset", "blobs", "--twin", "--method", "vae", "--steps", "5",
                 "--n-train", "40", "--n-test", "10", "--log-every", "5", "--quiet",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "blobs (twin)" and metrics["config"]["dataset"] == "blobs"
    assert metrics["config"]["twin"] is True and metrics["true_sigma"] == SIGMA
    assert math.isfinite(metrics["test_kl"])
    assert (out / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
