"""Spectra of a zoo's tensors through the N x N Gram matrix, never the P x P covariance.

For one tensor, stack the N models' flattened values as rows of ``X``
(``N x P``) and centre the columns: ``Xc = X - 1 mu^T``. Its singular values
``s_i`` and right singular vectors ``v_i`` (the principal directions in
parameter space) follow from the ``N x N`` Gram matrix::

    G = Xc Xc^T = U diag(s^2) U^T            (eigendecomposition, N x N)
    v_i = Xc^T u_i / s_i                     (one more pass over the blocks)

``G`` is a sum over blocks of columns, ``G = sum_b Xc_b Xc_b^T``, so it is
accumulated block by block (float64 accumulator) and memory stays
``O(N^2 + N * block)`` for the spectrum and ``O(P * k)`` for k directions.
A centred stack has rank at most ``N - 1``.

Numbers derived from a spectrum (:class:`Spectrum`):

* ``explained_variance_ratio[i] = s_i^2 / sum_j s_j^2``;
* ``effective_rank = exp(H(p))`` with ``p_i = s_i / sum_j s_j`` (the
  entropy-based effective rank of Roy & Vetterli, 2007);
* ``rank_for(q)``: the smallest ``r`` whose first ``r`` ratios sum to ``>= q``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from wsl.subspace.stacks import BLOCK, Stack

__all__ = ["QUANTILES", "Spectrum", "covariance_directions", "directions", "gram", "grams", "overlap",
           "principal_cosines", "spectra", "spectrum", "spectrum_from_values"]

QUANTILES = (0.5, 0.9, 0.99)
"""Variance fractions reported by :meth:`Spectrum.rank_for` in reports."""


@dataclass
class Spectrum:
    """The squared singular values of one centred stack (float64, largest first)."""

    name: str
    shape: tuple[int, ...]
    n_models: int
    eigenvalues: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return math.prod(self.shape)

    @property
    def total_variance(self) -> float:
        """``sum_i s_i^2 / (N - 1)``: the summed per-entry variance across models."""
        return float(self.eigenvalues.sum()) / max(self.n_models - 1, 1)

    @property
    def explained_variance_ratio(self) -> torch.Tensor:
        total = self.eigenvalues.sum()
        if total <= 0:
            return torch.zeros_like(self.eigenvalues)
        return self.eigenvalues / total

    @property
    def effective_rank(self) -> float:
        s = self.eigenvalues.clamp_min(0).sqrt()
        if s.sum() <= 0:
            return 0.0
        p = s / s.sum()
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))

    def rank_for(self, q: float) -> int:
        """Smallest rank whose directions explain at least a fraction ``q`` of the variance (0 if none)."""
        evr = self.explained_variance_ratio
        if evr.sum() <= 0:
            return 0
        cum = evr.cumsum(0)
        return int(min(int((cum < q - 1e-12).sum()) + 1, len(evr)))

    def explained_at(self, k: int) -> float:
        """Fraction of the variance in the first ``k`` directions."""
        return float(self.explained_variance_ratio[:max(k, 0)].sum())

    def summary(self, curve: int | None = None) -> dict[str, Any]:
        """The JSON numbers of a report (``curve``: how many ratios to keep; default all)."""
        evr = self.explained_variance_ratio
        return {"n_models": self.n_models, "n_params": self.n_params, "shape": list(self.shape),
                "total_variance": self.total_variance,
                "explained_variance_ratio": [float(x) for x in evr[:curve].tolist()],
                "effective_rank": self.effective_rank,
                "rank_for": {str(q): self.rank_for(q) for q in QUANTILES}, **self.extra}


def gram(stack: Stack, name: str, *, models: Sequence[int] | None = None, block: int = BLOCK,
         dtype: torch.dtype = torch.float32, group: Any = None) -> torch.Tensor:
    """The ``N x N`` Gram matrix of the centred stack of tensor ``name`` (float64)."""
    return grams(stack, [name], models=models, block=block, dtype=dtype, group=group)[name]


def grams(stack: Stack, names: Sequence[str] | None = None, *, models: Sequence[int] | None = None,
          block: int = BLOCK, dtype: torch.dtype = torch.float32, progress: bool = False,
          group: Any = None) -> dict[str, torch.Tensor]:
    """Gram matrices of many tensors; under ``torch.distributed`` the blocks are shared out across ranks.

    Every (tensor, block) pair is one unit of work, dealt round-robin to the
    ranks of ``group`` (default: the world, when a process group is
    initialised); each rank sums its blocks and one ``all_reduce`` per tensor
    adds them up, so every rank returns the same matrices as one process
    would, up to float summation order.
    """
    from tqdm.auto import tqdm

    import torch.distributed as dist

    names = list(stack.names if names is None else names)
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(group) if distributed else 0
    world = dist.get_world_size(group) if distributed else 1
    n = len(stack) if models is None else len(models)
    out: dict[str, torch.Tensor] = {}
    unit = 0
    idx = list(range(len(stack))) if models is None else [int(m) for m in models]
    for name in tqdm(names, desc="gram", unit="tensor", disable=not progress or rank != 0):
        g = None
        ranges = stack.row_ranges(name, block)
        for j, (r0, r1) in enumerate(ranges):
            if (unit + j) % world != rank:
                continue
            x = stack.read(name, r0, r1, idx, dtype)
            xc = x - x.mean(dim=0, keepdim=True)
            part = (xc @ xc.T).to(torch.float64)
            g = part if g is None else g + part
        unit += len(ranges)
        if g is None:
            g = torch.zeros((n, n), dtype=torch.float64)
        if world > 1:
            dist.all_reduce(g, group=group)
        out[name] = g
    return out


def spectrum_from_values(name: str, shape: Sequence[int], n_models: int, g: torch.Tensor) -> tuple[Spectrum, torch.Tensor]:
    """Eigendecompose a (centred) Gram matrix: the spectrum and ``U`` (columns: left vectors, largest first)."""
    g = (g + g.T) / 2
    lam, u = torch.linalg.eigh(g)
    lam, u = lam.flip(0), u.flip(1)
    r = max(min(n_models - 1, math.prod(shape)), 0)
    lam = lam[:r].clamp_min(0).cpu()
    return Spectrum(name, tuple(int(s) for s in shape), n_models, lam), u[:, :r]


def spectrum(stack: Stack, name: str, *, models: Sequence[int] | None = None, block: int = BLOCK,
             dtype: torch.dtype = torch.float32) -> Spectrum:
    """The spectrum of tensor ``name`` over the models (default: all) of ``stack``."""
    n = len(stack) if models is None else len(models)
    sp, _ = spectrum_from_values(name, stack.shapes[name], n, gram(stack, name, models=models, block=block,
                                                                   dtype=dtype))
    return sp


def spectra(stack: Stack, names: Sequence[str] | None = None, *, models: Sequence[int] | None = None,
            block: int = BLOCK, dtype: torch.dtype = torch.float32, progress: bool = False,
            group: Any = None) -> dict[str, Spectrum]:
    """Spectra (eigenvalues only, no directions) of many tensors, each by the cheaper of two exact routes.

    * ``P >= N`` entries: the ``N x N`` Gram matrix (:func:`grams`, blocks
      shared across ranks), then ``eigvalsh``, ``O(N^2 P + N^3)``;
    * ``P < N`` (biases and small kernels of a large zoo): the ``P x P``
      scatter ``C = Xc^T Xc``, whose non-zero eigenvalues are those of
      ``G = Xc Xc^T``, in ``O(N P^2 + P^3)``. The whole ``N x P`` matrix is
      read at once, which is fewer than the ``N^2`` entries of ``G``.

    The eigendecompositions are dealt one tensor per rank (round-robin) and
    the eigenvalues assembled with one ``all_reduce``. Equal to
    :func:`spectrum_from_values` on :func:`grams` up to float64 rounding.
    """
    from wsl.subspace.distributed import assemble, rank_world

    names = list(stack.names if names is None else names)
    idx = stack._models(models)
    n = len(idx)
    wide = [nm for nm in names if stack.numel(nm) >= n]
    g = grams(stack, wide, models=idx, block=block, dtype=dtype, progress=progress, group=group)
    rank, world = rank_world(group)
    sizes = [max(min(n - 1, stack.numel(nm)), 0) for nm in names]
    flat = torch.zeros(sum(sizes), dtype=torch.float64)
    at = 0
    for j, (name, r) in enumerate(zip(names, sizes)):
        if j % world == rank and r:
            if name in g:
                m = (g[name] + g[name].T) / 2
            else:
                x = stack.matrix(name, models=idx, dtype=dtype).to(torch.float64)
                xc = x - x.mean(dim=0, keepdim=True)
                m = xc.T @ xc
            flat[at:at + r] = torch.linalg.eigvalsh(m).flip(0)[:r].clamp_min(0).cpu()
        at += r
    assemble(flat, group)
    out, at = {}, 0
    for name, r in zip(names, sizes):
        out[name] = Spectrum(name, stack.shapes[name], n, flat[at:at + r].clone())
        at += r
    return out


def directions(stack: Stack, name: str, k: int, *, models: Sequence[int] | None = None, block: int = BLOCK,
               dtype: torch.dtype = torch.float32, g: torch.Tensor | None = None, group: Any = None
               ) -> tuple[Spectrum, torch.Tensor, torch.Tensor]:
    """Spectrum, mean ``(P,)`` and the top-``k`` orthonormal principal directions ``(P, k)`` of tensor ``name``.

    Directions whose singular value is zero (k above the stack's rank) are
    left out, so the returned ``k`` may be smaller than asked. Under
    ``torch.distributed`` the row blocks of the mean and of ``V`` are dealt
    round-robin to the ranks and assembled by one zero-filled ``all_reduce``
    (exact); every rank returns the whole result.
    """
    from wsl.subspace.distributed import assemble, rank_world

    n = len(stack) if models is None else len(models)
    if g is None:
        g = gram(stack, name, models=models, block=block, dtype=dtype, group=group)
    sp, u = spectrum_from_values(name, stack.shapes[name], n, g)
    s = sp.eigenvalues.sqrt()
    scale = s.max() if len(s) else torch.tensor(0.0, dtype=torch.float64)
    keep = int(((s > scale * 1e-6) & (s > 0)).sum()) if len(s) else 0
    k = max(0, min(int(k), keep))
    p = stack.numel(name)
    dev = u.device
    mean = torch.zeros(p, dtype=torch.float64, device=dev)
    vecs = torch.zeros((p, k), dtype=dtype, device=dev)
    uk = (u[:, :k] / s[:k].to(dev)).to(dtype)
    rank, world = rank_world(group)
    idx = stack._models(models)
    per_row = math.prod(stack.shapes[name][1:]) if len(stack.shapes[name]) > 1 else 1
    for j, (r0, r1) in enumerate(stack.row_ranges(name, block)):
        if j % world != rank:
            continue
        x = stack.read(name, r0, r1, idx, dtype)
        lo = r0 * per_row
        mu = x.mean(dim=0)
        mean[lo:lo + x.shape[1]] = mu.to(torch.float64)
        if k:
            vecs[lo:lo + x.shape[1]] = (x - mu).T @ uk
    assemble(mean, group)
    if k:
        assemble(vecs, group)
    if k:  # re-orthonormalise (float32 blocks leave ~1e-6 drift); keep each column's sign
        q, r = torch.linalg.qr(vecs)
        vecs = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return sp, mean, vecs


def covariance_directions(stack: Stack, name: str, *, rank: int | None = None, variance: float | None = None,
                          models: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(P,)`` and top directions ``(P, k)`` from the ``P x P`` covariance, for stacks with ``N > P``.

    The same directions as :func:`directions` (the right singular vectors of
    the centred stack) with the same rank rule: ``rank``, or the fewest that
    explain ``variance``; zero singular values are left out.
    """
    x = stack.matrix(name, models=models, dtype=torch.float64)
    n, p = x.shape
    mean = x.mean(dim=0)
    xc = x - mean
    lam, w = torch.linalg.eigh(xc.T @ xc)
    lam, w = lam.flip(0)[:max(min(n - 1, p), 0)].clamp_min(0), w.flip(1)
    k = Spectrum(name, stack.shapes[name], n, lam.cpu()).rank_for(float(variance)) if variance is not None \
        else int(rank or 0)
    s = lam.sqrt()
    keep = int(((s > s.max() * 1e-6) & (s > 0)).sum()) if len(s) else 0
    return mean, w[:, :max(0, min(k, keep))]


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of orthonormal ``a`` and ``b`` (largest first)."""
    if a.shape[1] == 0 or b.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return torch.linalg.svdvals(a.T.to(torch.float64) @ b.to(torch.float64)).clamp(0, 1).cpu()


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared cosine of the principal angles: 1 for one subspace, about ``k / P`` for random ones."""
    c = principal_cosines(a, b)
    k = min(a.shape[1], b.shape[1])
    return float((c ** 2).sum() / k) if k else 0.0
