"""Compress a zoo: one per-tensor basis per architecture, every row stored as its coefficients.

For each architecture, the basis of each floating tensor ``t`` is the mean
``mu_t`` and the top ``k_t`` principal directions ``V_t`` of the stack of the
fitting rows; each row is stored as ``c_t = V_t^T (theta_t - mu_t)`` and read
back as ``mu_t + V_t c_t`` (:mod:`wsl.zoo.compressed`).

**Which rows are fitted.** By default *every row* of the architecture (every
checkpoint of every model, epoch-0 initialisations included): the basis that
minimises the squared reconstruction error summed over what is stored. At
``rank >= N - 1`` every fitted row then round-trips exactly (to float32
rounding). ``split="train"`` fits on the rows of one split only (an honest
held-out setting: the other splits' rows are projected on a basis that never
saw them); every row is stored either way. Rows with non-finite weights
(diverged runs) are left out of the fit (they would make every direction
NaN), listed under ``compression.fit.nonfinite_rows``, and stored as their
(non-finite) projections.

**Rank.** ``rank=k`` keeps ``k_t = min(k, P_t, rank of the stack)``
directions per tensor; ``variance=q`` keeps, per tensor, the fewest
directions explaining a fraction ``q`` of that tensor's variance.

**Route.** With ``N`` fitting rows and ``P_t`` entries, the directions come
from the ``N x N`` Gram matrix when ``N <= P_t`` (:func:`~wsl.subspace.spectrum.directions`)
and from the ``P_t x P_t`` covariance ``Xc^T Xc = W diag(s^2) W^T`` otherwise
(small tensors of big zoos: an ``N^3`` eigensolve would cost minutes where
``P_t^3`` costs milliseconds); both give the same subspace.

Bytes on disk (float32): ``sum_t P_t (k_t + 1)`` per architecture for the
basis, ``sum_t k_t`` per row for the coefficients, versus ``sum_t P_t`` per
row for the original.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from wsl.errors import WslError, ZooFormatError
from wsl.subspace.basis import fit as fit_basis
from wsl.subspace.stacks import TensorStack

__all__ = ["compress", "stored_bytes"]


def compress(zoo_path: str | os.PathLike[str], out: str | os.PathLike[str], *, rank: int | None = None,
             variance: float | None = None, split: str | None = None, progress: bool = True) -> Any:
    """Write ``zoo_path`` as a compressed zoo at ``out`` (see the module docstring); returns the opened result.

    Exactly one of ``rank`` and ``variance``. ``split`` restricts the rows the
    bases are fitted on (default: every row). The output appears only when
    complete (written beside it, then renamed); ``out`` must not exist or be
    an empty folder. Read it back with :func:`wsl.load_zoo`.
    """
    from wsl.zoo import load_zoo
    from wsl.zoo.compressed_writer import write_compressed_zoo
    from wsl.zoo.format import SPLIT_NAMES

    if (rank is None) == (variance is None):
        raise WslError("compress: give exactly one of rank= and variance=")
    if split is not None and split not in SPLIT_NAMES:
        raise ZooFormatError(f"compress: unknown split {split!r}; valid: {list(SPLIT_NAMES)}")
    zoo = load_zoo(zoo_path)
    bases: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    fitted: dict[str, int] = {}
    skipped: dict[str, list[int]] = {}
    for aid in zoo.architectures:
        rows = zoo.filter(arch=aid)
        fit_rows = rows.split(split) if split is not None and len(rows) else rows
        if len(rows) and not len(fit_rows):
            raise ZooFormatError(f"{zoo.root}: architecture {aid} has no rows in split {split!r} to fit a basis on")
        if not len(rows):
            bases[aid], fitted[aid] = {}, 0
            continue
        stacked = fit_rows.stacked()
        finite = torch.ones(len(fit_rows), dtype=torch.bool)
        for t in stacked.values():
            if t.is_floating_point():
                finite &= torch.isfinite(t.reshape(len(fit_rows), -1)).all(dim=1)
        if not bool(finite.any()):
            raise ZooFormatError(f"{zoo.root}: every row of architecture {aid} has non-finite weights; "
                                 "nothing to fit a basis on")
        if not bool(finite.all()):  # a NaN row would turn every mean and direction into NaN
            bad = fit_rows.row_ids[~finite.numpy()].tolist()
            skipped[aid] = bad
            warnings.warn(f"{zoo.root}: {len(bad)} rows of architecture {aid} have non-finite weights (rows "
                          f"{bad[:5]}{'...' if len(bad) > 5 else ''}); the basis is fitted without them and they "
                          "are stored as non-finite reconstructions", stacklevel=2)
            stacked = {k: v[finite] for k, v in stacked.items()}
        ids = [str(r) for r in fit_rows.row_ids[finite.numpy()].tolist()]
        basis = fit_basis(TensorStack(stacked, ids), rank=rank, variance=variance, progress=progress)
        bases[aid] = {name: (basis.means[name], basis.dirs[name]) for name in basis.names}
        fitted[aid] = len(ids)
    fit = {"rank": rank, "variance": variance, "split": split, "rows": fitted, "nonfinite_rows": skipped,
           "rows_fitted": "all rows of the architecture" if split is None else f"rows of split {split!r}"}
    path = write_compressed_zoo(out, zoo, bases, fit=fit, progress=progress)
    return load_zoo(Path(path))


def stored_bytes(shapes: dict[str, tuple[int, ...]], ranks: dict[str, int], rows: int) -> tuple[int, int]:
    """(basis, coefficient) float32 bytes of ``rows`` rows of one architecture under per-tensor ``ranks``."""
    basis = sum(4 * math.prod(s) * (ranks[n] + 1) for n, s in shapes.items())
    return basis, 4 * rows * sum(ranks.values())
