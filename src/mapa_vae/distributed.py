"""Data-parallel training over several processes with ``torch.distributed`` (``torchrun``).

Every rank holds the whole training set and builds the same model from the same seed. Each step
every rank draws the same global minibatch of ``B`` indices and keeps its own contiguous share
of ``b_r`` rows (shares differ by at most one row); its bound is the mean over its share,
weighted by ``b_r / B``, so the gradients summed over ranks by one all-reduce are those of one
process on the whole minibatch. Monte Carlo noise for the minibatch (encoder samples, binary
draws) is drawn for the whole minibatch on every rank and each keeps its rows
(:func:`batch_normal`, :func:`batch_uniform`), so the random stream is one process's: a run on
``W`` ranks gives one process's result up to floating-point summation order. Work that is not
per-minibatch (MAPA's weights and attachment candidates, projection and re-attachment, the
lagging encoder's mutual-information check, the prior-proposal ablation's shared prior draws) is
repeated identically on every rank.

Network passes are counted as one process would spend them: minibatch work is summed over ranks,
work every rank repeats is counted once.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass

import torch

_NOISE_ROWS: contextvars.ContextVar = contextvars.ContextVar("noise_rows", default=None)


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world_size`` data-parallel ranks."""

    rank: int
    world_size: int

    @classmethod
    def from_process_group(cls) -> "Shard":
        """The shard of the initialised default process group (a clear error without one)."""
        import torch.distributed as dist

        if not dist.is_available():
            raise ValueError("distributed=True: this PyTorch build has no torch.distributed")
        if not dist.is_initialized():
            raise ValueError("distributed=True needs an initialised process group: launch with "
                             "torchrun and call torch.distributed.init_process_group first "
                             "(the mapa-vae fit command's --distributed does both)")
        return cls(dist.get_rank(), dist.get_world_size())

    def rows(self, batch: int) -> slice:
        """This rank's contiguous share of a global minibatch of ``batch`` rows."""
        if batch < self.world_size:
            raise ValueError(f"a minibatch of {batch} rows cannot be shared by "
                             f"{self.world_size} ranks; use batch_size >= {self.world_size}")
        return slice(batch * self.rank // self.world_size,
                     batch * (self.rank + 1) // self.world_size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over ranks, in place; every rank gets the same result."""
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, parameters) -> None:
        """Sum the gradients of ``parameters`` over ranks with one all-reduce."""
        parameters = [p for p in parameters if p.requires_grad]
        if not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = self.sum(torch.cat([g.reshape(-1) for g in grads]))
        for p, summed in zip(parameters, flat.split([g.numel() for g in grads])):
            p.grad = summed.view_as(p)


@contextlib.contextmanager
def noise_rows(rows: slice | None, batch: int):
    """Within this block, :func:`batch_normal` draws noise for a global minibatch of ``batch``
    rows and keeps ``rows`` (nothing changes when ``rows`` is ``None``)."""
    token = _NOISE_ROWS.set(None if rows is None else (rows, batch))
    try:
        yield
    finally:
        _NOISE_ROWS.reset(token)


def batch_normal(shape: tuple, dtype, device, generator=None, batch_dim: int = 1) -> torch.Tensor:
    """Standard normal noise of ``shape`` for the rows of a minibatch along ``batch_dim``; in a
    data-parallel step, this rank's rows of the noise for the whole minibatch."""
    return _batch_noise(torch.randn, shape, dtype, device, generator, batch_dim)


def batch_uniform(shape: tuple, dtype, device, generator=None, batch_dim: int = 1) -> torch.Tensor:
    """Uniform noise on ``[0, 1)`` of ``shape``, as :func:`batch_normal` draws its own."""
    return _batch_noise(torch.rand, shape, dtype, device, generator, batch_dim)


def _batch_noise(draw, shape: tuple, dtype, device, generator, batch_dim: int) -> torch.Tensor:
    active = _NOISE_ROWS.get()
    if active is None:
        return draw(shape, dtype=dtype, device=device, generator=generator)
    rows, batch = active
    if shape[batch_dim] != rows.stop - rows.start:
        raise RuntimeError(f"noise for {shape[batch_dim]} rows drawn in a data-parallel step "
                           f"whose share is {rows.stop - rows.start} rows")
    full = list(shape)
    full[batch_dim] = batch
    noise = draw(full, dtype=dtype, device=device, generator=generator)
    return noise.narrow(batch_dim, rows.start, rows.stop - rows.start)


def init_from_environment(device: str) -> tuple[Shard, str]:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for CUDA, gloo for
    the CPU. Returns the shard and this rank's device (``cuda:LOCAL_RANK`` for ``"cuda"``)."""
    import torch.distributed as dist

    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                 "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"--distributed needs the environment torchrun sets ({', '.join(missing)} "
                         f"missing); launch as: torchrun --nproc-per-node=2 -m mapa_vae fit "
                         f"--distributed ...")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        from .devices import resolve_device

        torch.cuda.set_device(resolve_device(device))  # NCCL talks to the current device
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Shard.from_process_group(), device
