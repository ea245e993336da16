"""Running a subspace analysis on several processes (``torchrun``): setup, who does what, and summing up.

Every quantity of :mod:`wsl.subspace.spectrum` is a sum over disjoint pieces
of work, so it splits across ranks without approximation:

* a Gram matrix ``G = sum_b Xc_b Xc_b^T`` is a sum over column blocks ``b``;
  each rank sums the blocks dealt to it and one ``all_reduce`` adds the
  partial sums (:func:`wsl.subspace.spectrum.grams`);
* principal directions ``V[rows of b] = Xc_b^T U_k S_k^-1`` and the mean are
  row blocks of a ``(P, k)`` matrix: each rank fills its blocks, leaves the
  others at zero, and an ``all_reduce`` (sum) assembles the whole matrix
  exactly, since every entry has one non-zero contributor
  (:func:`wsl.subspace.spectrum.directions`);
* eigenvalues of several tensors are dealt whole, one tensor per unit of
  work, and assembled the same way (:func:`wsl.subspace.spectrum.spectra`).

All ranks must make the same calls in the same order (every call above is a
collective); afterwards every rank holds the same numbers, equal to a
one-process run up to the float64 summation order of ``G``. Use
:func:`is_main` to let one rank write the outputs.

Launch (two processes on one machine, CPU/gloo)::

    torchrun --nproc_per_node 2 my_analysis.py     # calls init_from_env() first
"""

from __future__ import annotations

import os
from typing import Any

import torch

from wsl.errors import WslError

__all__ = ["assemble", "cleanup", "init_from_env", "is_main", "owner", "rank_world"]


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's ``WORLD_SIZE``/``RANK`` variables; return ``(rank, world)``.

    Without those variables (or with ``WORLD_SIZE=1``) nothing is initialised
    and ``(0, 1)`` is returned, so the same script runs as one process.
    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``.
    Idempotent.
    """
    import torch.distributed as dist

    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise WslError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None
    if world <= 1:
        return 0, 1
    if not dist.is_available():
        raise WslError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
    return rank_world()


def rank_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world size)`` of ``group`` (default: the world), or ``(0, 1)`` without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def is_main(group: Any = None) -> bool:
    """True on rank 0 (and in a single process): the rank that writes reports."""
    return rank_world(group)[0] == 0


def owner(unit: int, group: Any = None) -> int:
    """The rank that does unit of work number ``unit`` (round-robin)."""
    return int(unit) % rank_world(group)[1]


def assemble(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place (each rank zero-filled what it did not compute); identity alone.

    With the ``nccl`` backend a CPU tensor travels through the current CUDA
    device (nccl reduces CUDA tensors only).
    """
    import torch.distributed as dist

    if rank_world(group)[1] > 1:
        if dist.get_backend(group) == "nccl" and t.device.type != "cuda":
            buf = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(buf, group=group)
            t.copy_(buf)
        else:
            dist.all_reduce(t, group=group)
    return t


def cleanup() -> None:
    """Leave the process group if one was initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
