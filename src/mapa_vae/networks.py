"""Neural networks: the default decoder architecture and float64 evaluation copies."""
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
