"""Neural networks: the default decoder (an MLP), a small convolutional decoder for images, and
float64 evaluation copies."""
from __future__ import annotations

import copy

import torch
from torch import nn


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (64, 64),
        activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """A fully connected network ``in_dim → hidden… → out_dim`` with a linear output layer."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class ConvDecoder(nn.Module):
    """A small convolutional decoder for images of ``image_shape = (H, W)`` (both divisible by
    4): ``z → Linear → (c₀, H/4, W/4) → ConvTranspose 4×4 stride 2 → (c₁, H/2, W/2) →
    ConvTranspose 4×4 stride 2 → (1, H, W)``, flattened to ``H · W`` outputs (a Gaussian's
    means or a Bernoulli's logits), the activation between layers.

    Parameters
    ----------
    latent_dim : int
    image_shape : tuple of two ints
    channels : tuple of two ints, default=(64, 32)
        ``c₀`` and ``c₁``.
    activation : type of torch.nn.Module, default=torch.nn.ReLU
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int],
                 channels: tuple[int, int] = (64, 32), activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        height, width = (int(v) for v in image_shape)
        if height % 4 or width % 4 or height < 4 or width < 4:
            raise ValueError(f"the convolutional decoder doubles its grid twice, so the image's "
                             f"height and width must be multiples of 4; got {height} x {width}")
        first, second = (int(c) for c in channels)
        self.image_shape, self.channels = (height, width), (first, second)
        self.grid = (first, height // 4, width // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, first * height * width // 16),
                                     activation())
        self.upsample = nn.Sequential(nn.ConvTranspose2d(first, second, 4, stride=2, padding=1),
                                      activation(),
                                      nn.ConvTranspose2d(second, 1, 4, stride=2, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grid = self.project(z).reshape(-1, *self.grid)
        return self.upsample(grid).flatten(1)


def float64_decoder(decoder: nn.Module):
    """A float64, gradient-free copy of a decoder module on the CPU, as a tensor → tensor
    function (evaluation runs there, wherever the model was trained)."""
    module = copy.deepcopy(decoder).double().cpu().eval()

    def decode(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(z)

    return decode


def differentiable_decoder(decoder: nn.Module):
    """A float64 copy of a decoder module on the CPU whose output is differentiable in its input
    codes (its own weights are frozen), as a tensor → tensor function: what the log-likelihood
    evaluator of :mod:`mapa_vae.marginal` fits its proposals through."""
    module = copy.deepcopy(decoder).double().cpu().eval().requires_grad_(False)
    return module
