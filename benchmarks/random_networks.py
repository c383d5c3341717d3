"""Random-network ground truths for the development suite (``benchmarks/suite.py``), named by
file as any user's truths are, e.g. ``benchmarks/random_networks.py:rn4_tanh``:

    python3 -m mapa_vae fit --dataset benchmarks/random_networks.py:rn4_tanh

``z ~ N(0, I_{d_z})``, ``x = g(z) + σ ε``; each truth's weights are drawn from its own seed.
"""
import numpy as np
import torch

from mapa_vae.ground_truth import GroundTruth

ACTIVATIONS = {"tanh": torch.tanh, "sin": torch.sin, "softplus": torch.nn.functional.softplus,
               "elu": torch.nn.functional.elu}


def random_network(latent_dim: int, data_dim: int, depth: int, activation: str, sigma: float,
                   seed: int) -> GroundTruth:
    """A ground truth ``x = g(z) + σ ε``, ``z ~ N(0, I_{d_z})``: ``depth`` hidden layers of width
    ``data_dim``, ``h ← act(W h + b)`` with ``W ~ N(0, 1 / fan-in)`` and ``b ~ N(0, 0.1²)``, then
    a linear read-out, ``x = V h`` with ``V ~ N(0, 1 / fan-in)``; every weight drawn from
    ``seed``, so a name fixes the truth."""
    rng = np.random.default_rng(seed)
    widths = [latent_dim] + [data_dim] * depth
    layers = [(rng.normal(0, 1 / np.sqrt(a), (a, b)), rng.normal(0, 0.1, b))
              for a, b in zip(widths[:-1], widths[1:])]
    readout = rng.normal(0, 1 / np.sqrt(widths[-1]), (widths[-1], data_dim))
    act = ACTIVATIONS[activation]
    layers = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in layers]
    readout = torch.from_numpy(readout)

    def g(z):
        h = z.to(torch.float64)
        for w, b in layers:
            h = act(h @ w + b)
        return (h @ readout).to(z.dtype)

    name = f"rn{latent_dim}-{activation}-{depth}"
    return GroundTruth("normal", g, sigma=sigma, latent_dim=latent_dim, name=name)


#: The suite's random networks.
rn3_tanh = random_network(3, 16, 2, "tanh", 0.1, seed=301)
rn4_tanh = random_network(4, 24, 2, "tanh", 0.1, seed=401)
rn6_softplus = random_network(6, 32, 2, "softplus", 0.2, seed=601)
rn8_sin = random_network(8, 32, 1, "sin", 0.1, seed=801)
rn12_tanh = random_network(12, 64, 3, "tanh", 0.05, seed=1201)
rn16_elu = random_network(16, 64, 2, "elu", 0.1, seed=1601)
rn32_tanh = random_network(32, 128, 2, "tanh", 0.1, seed=3201)
