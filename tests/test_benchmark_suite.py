"""The development suite (benchmarks/suite.py): its split, its random-network truths
(benchmarks/random_networks.py) and its verdicts."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import random_networks  # noqa: E402
import suite  # noqa: E402


def test_the_split_is_fixed_disjoint_and_covers_every_kind_in_both_halves():
    names = [e.name for e in suite.SUITE]
    assert len(names) == len(set(names)) >= 10
    for half in suite.HALVES:
        kinds = {e.kind for e in suite.entries(half)}
        assert kinds == {"truth", "data"}
    sizes = {d for e in suite.SUITE for d in e.latent_dims}
    assert min(sizes - {2}) == 3 and max(sizes) == 32


def test_each_truths_latent_size_is_the_entrys():
    from mapa_vae import datasets

    for entry in suite.SUITE:
        if entry.kind == "truth":
            assert datasets.get(entry.source).latent_dim == entry.latent_dims[0], entry.name


def test_a_random_network_is_fixed_by_its_seed_and_is_not_linear():
    a = random_networks.random_network(3, 10, 2, "tanh", 0.1, seed=5)
    b = random_networks.random_network(3, 10, 2, "tanh", 0.1, seed=5)
    c = random_networks.random_network(3, 10, 2, "tanh", 0.1, seed=6)
    z = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.f(z), b.f(z)) and not torch.allclose(a.f(z), c.f(z))
    assert a.f(z).shape == (50, 10) and a.f(z.float()).dtype == torch.float32
    # g(2z) − 2 g(z) + g(0) vanishes for an affine map; not here
    bend = a.f(2 * z) - 2 * a.f(z) + a.f(torch.zeros_like(z))
    assert bend.abs().max() > 0.1


def _row(entry, method, seed, value, kind="data"):
    key = "test_log_likelihood" if kind == "data" else "test_kl"
    return {"half": "development", "entry": entry, "suite_latent_dim": 4, "suite_method": method,
            "seed": seed, key: value, f"{key}_se": 0.1}


@pytest.mark.parametrize("kind", ["data", "truth"])
def test_the_verdict_compares_medians_in_the_right_direction(kind):
    mapa, vae, iwae = (1.0, 2.0, 3.0), (0.5, 1.5, 9.0), (1.2, 1.8, 2.2)
    rows = [_row("x", m, s, v, kind) for m, values in (("mapa", mapa), ("vae", vae),
                                                      ("iwae", iwae)) for s, v in enumerate(values)]
    table = {r["method"]: r for r in suite.summarize(rows)}
    assert (table["mapa"]["median"], table["mapa"]["min"], table["mapa"]["max"]) == (2.0, 1.0, 3.0)
    # medians: MAPA 2.0, the VAE 1.5, IWAE 1.8: MAPA is best when higher is better, worst when lower
    assert table["mapa"]["at_least_best_baseline"] is (kind == "data")
    assert "at_least_best_baseline" not in table["vae"]
    assert np.isclose(table["iwae"]["se"], 0.1)
