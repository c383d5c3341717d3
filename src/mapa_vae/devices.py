"""Where computation runs: a device name checked against what this machine has.

Training runs on the estimator's ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``);
evaluation (quadrature, importance sampling) always runs in float64 on the CPU, on a copy of the
decoder, so that scores do not depend on where a model was trained.
"""
from __future__ import annotations

import torch


def resolve_device(device) -> torch.device:
    """``device`` as a :class:`torch.device`, or a ``ValueError`` naming the device asked for
    and why it cannot be used. Nothing falls back to another device."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device name PyTorch knows "
                         f"(e.g. 'cpu', 'cuda', 'cuda:1', 'mps'): {error}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = ("this PyTorch build has no CUDA support (install a CUDA build of torch)"
                     if torch.version.cuda is None else "no CUDA device is visible")
            raise ValueError(f"device {device!r} was asked for, but {build}; use device='cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {device!r} was asked for, but this machine has {count} "
                             f"CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} was asked for, but the MPS backend is not "
                             f"available on this machine; use device='cpu'")
    elif resolved.type != "cpu":
        raise ValueError(f"device {device!r}: only 'cpu', 'cuda[:index]' and 'mps' are supported")
    return resolved
