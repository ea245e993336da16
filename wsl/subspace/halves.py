"""Is a subspace *shared*? Principal angles between the top-k subspaces of two disjoint halves of a zoo.

Split the N models into halves ``A`` and ``B`` (``n_A + n_B = N``, seeded;
checkpoints of one model always fall in the same half, so a model's own
trajectory cannot fake agreement). Each half's top-k principal directions
``V_A``, ``V_B`` (``P x k``, orthonormal) are compared by the cosines of the
principal angles, ``cos theta_j = sigma_j(V_A^T V_B)``, and by their mean
square, the *overlap* ``sum_j cos^2 theta_j / k`` (1: one subspace; about
``k / P`` for two random k-dimensional subspaces of R^P).

Everything follows from the full stack's centred Gram matrix
``G = Y Y^T`` (``Y``: rows centred by the *full* mean), so no direction in
parameter space is ever formed. With ``C_h = I - 1 1^T / n_h`` the half
centring and ``G_hh'`` the blocks of ``G``::

    G_A  = C_A G_AA C_A = U_A diag(lam_A) U_A^T        (the half's own centred Gram)
    V_A  = (C_A Y_A)^T U_A diag(lam_A)^(-1/2)
    V_A^T V_B = diag(lam_A)^(-1/2) U_A^T G_AB U_B diag(lam_B)^(-1/2)

(``C_h`` drops out of the last line: eigenvectors of ``G_h`` with non-zero
eigenvalues are orthogonal to ``1``). A layer's Gram is the sum of its
tensors' Grams, so the same code serves layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["MAX_K", "half_cosines", "split_halves"]

MAX_K = 32
"""Largest subspace dimension compared between halves."""


def split_halves(groups: Sequence[str], seed: int = 0) -> tuple[list[int], list[int]]:
    """Two disjoint halves of the rows, whole groups at a time (rows of one group share a half).

    The distinct groups are shuffled (seeded) and the first half of them
    (rounded down) makes half A. Row indices come back sorted.
    """
    keys = list(dict.fromkeys(groups))
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(keys), generator=gen).tolist()
    first = {keys[i] for i in order[:len(keys) // 2]}
    a = [i for i, g in enumerate(groups) if g in first]
    b = [i for i, g in enumerate(groups) if g not in first]
    return a, b


def _half(g: torch.Tensor, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of the half's own centred Gram."""
    sel = torch.tensor(idx, dtype=torch.long, device=g.device)
    sub = g[sel][:, sel]
    n = len(idx)
    c = torch.eye(n, dtype=sub.dtype, device=sub.device) - 1.0 / n
    gh = c @ sub @ c
    lam, u = torch.linalg.eigh((gh + gh.T) / 2)
    return lam.flip(0), u.flip(1)


def _usable(lam: torch.Tensor) -> int:
    """How many eigenvalues are clearly non-zero (relative to the largest)."""
    if not len(lam) or lam[0] <= 0:
        return 0
    return int((lam > lam[0] * 1e-12).sum())


def half_cosines(g: torch.Tensor, a: Sequence[int], b: Sequence[int], k: int) -> dict[str, Any]:
    """Principal cosines and overlap of the top-``k`` subspaces of halves ``a`` and ``b`` of Gram ``g``.

    ``k`` is capped at each half's rank (``n_h - 1`` at most, fewer when
    the half spans less); the returned ``k`` is the one used.
    """
    a, b = list(a), list(b)
    if len(a) < 2 or len(b) < 2:
        return {"k": 0, "overlap": None, "cosines": [], "reason": "a half has fewer than 2 models"}
    lam_a, u_a = _half(g, a)
    lam_b, u_b = _half(g, b)
    k = max(0, min(int(k), _usable(lam_a), _usable(lam_b)))
    if k == 0:
        return {"k": 0, "overlap": None, "cosines": [], "reason": "a half has no variance"}
    sa = lam_a[:k].rsqrt()
    sb = lam_b[:k].rsqrt()
    ia = torch.tensor(a, dtype=torch.long, device=g.device)
    ib = torch.tensor(b, dtype=torch.long, device=g.device)
    cross = g[ia][:, ib]
    m = (sa[:, None] * (u_a[:, :k].T @ cross @ u_b[:, :k])) * sb[None, :]
    cos = torch.linalg.svdvals(m).clamp(0, 1).cpu()
    return {"k": k, "overlap": float((cos ** 2).mean()), "cosines": [float(c) for c in cos]}
