"""Multi-process training helpers: torchrun detection, backend choice, sharding, gathering.

Under ``torchrun --nproc_per_node=N -m wsl train CONFIG`` every process sees
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`setup` then initialises the
default process group with ``nccl`` when the device is CUDA and ``gloo``
otherwise. Without those variables everything degrades to one process.

Data parallelism is exact: every rank draws the same global batch (same
seed), takes the positions ``rank, rank + W, ...`` of it (:func:`shard`),
and scales its summed loss by ``W / n_global`` so that DDP's gradient
*average* equals the gradient of the mean loss over the global batch. A rank
left without samples (final batch smaller than ``W``) runs one sample with
zero loss weight so that the gradient all-reduce still matches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from wsl.errors import ConfigError

__all__ = ["DistInfo", "all_sum", "barrier", "broadcast", "cleanup", "gather_predictions", "setup", "shard"]


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` if CUDA is available, else ``cpu``; explicit names are checked."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("train.device is 'mps' but MPS is not available")
    return torch.device(name)


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group if launched by torchrun (idempotent); return this process's info."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, dev, backend)


def cleanup() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard(idx: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's part of a global batch of positions (strided: ``idx[rank::world]``)."""
    return idx[info.rank::info.world_size] if info.enabled else idx


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy); identity in one process."""
    if not info.enabled:
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (other ranks pass a tensor of the same shape and dtype); identity in one process."""
    if not info.enabled:
        return t
    buf = t.to(info.device).contiguous()  # nccl needs CUDA tensors, gloo CPU ones: info.device is the right one
    dist.broadcast(buf, src=0)
    return buf.to(t.device)


def gather_predictions(pred_local: torch.Tensor, idx_local: torch.Tensor, n: int, info: DistInfo) -> torch.Tensor:
    """Full ``(n, ...)`` predictions on every rank from each rank's ``(positions, values (k, ...))``.

    Every position must be predicted by exactly one rank; the result is the
    sum of zero-filled per-rank tensors, so it is exact.
    """
    full = torch.zeros(n, *pred_local.shape[1:], dtype=torch.float64, device=pred_local.device)
    full[idx_local.to(pred_local.device)] = pred_local.to(torch.float64)
    return all_sum(full, info)
