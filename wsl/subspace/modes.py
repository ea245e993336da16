"""The mode-wise (HOSVD) view of a zoo's matrices: left and right singular subspaces pooled across models.

For a tensor with ``ndim >= 2``, model ``i``'s value is reshaped to a
matrix ``W_i`` of shape ``(out, rest)`` (first axis against all others, so a
conv kernel ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``). Pooled over
the N models::

    L = sum_i W_i W_i^T      (out x out)   -- left (output-unit) mode
    R = sum_i W_i^T W_i      (rest x rest) -- right (input) mode

The eigenvalues of ``L`` are the squared singular values of the mode-1
unfolding ``[W_1 ... W_N]`` (``out x N*rest``), those of ``R`` of the
stacked ``[W_1; ...; W_N]`` (``N*out x rest``): the factor subspaces of a
higher-order SVD of the ``N x out x rest`` tensor. As in Kaushik et al.
(2025), the matrices are **not centred**: the mean weight is part of what
these modes describe, so their spectra mix the mean with the variation
across models (compare them with the same view of the nulls, never with the
centred spectra). A side larger than :data:`MAX_SIDE` is skipped.

Models are read a few at a time (at most ``block`` entries, at least one
model's whole tensor), so memory is ``O(out^2 + rest^2 + block)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsl.subspace.spectrum import Spectrum
from wsl.subspace.stacks import BLOCK, Stack

__all__ = ["MAX_SIDE", "mode_grams", "mode_summary"]

MAX_SIDE = 4096
"""Largest side (out or rest) whose Gram matrix is formed."""


def mode_grams(stack: Stack, name: str, *, block: int = BLOCK, max_side: int = MAX_SIDE
               ) -> dict[str, torch.Tensor | str]:
    """``{"left": L, "right": R}`` of tensor ``name`` (float64); a skipped side holds the reason instead."""
    shape = stack.shapes[name]
    if len(shape) < 2:
        return {side: f"tensor has {len(shape)} dimension(s); the mode view needs a matrix"
                for side in ("left", "right")}
    out, rest = int(shape[0]), math.prod(shape[1:])
    sides: dict[str, Any] = {}
    for side, dim in (("left", out), ("right", rest)):
        sides[side] = (torch.zeros((dim, dim), dtype=torch.float64) if dim <= max_side
                       else f"{side} side has {dim} > {max_side} entries; its Gram matrix is not formed")
    per = max(1, block // max(out * rest, 1))
    n = len(stack)
    for m0 in range(0, n, per):
        w = stack.read(name, 0, out, list(range(m0, min(n, m0 + per))), torch.float64).reshape(-1, out, rest)
        if isinstance(sides["left"], torch.Tensor):
            sides["left"] = sides["left"].to(w.device) + torch.einsum("car,cbr->ab", w, w)
        if isinstance(sides["right"], torch.Tensor):
            sides["right"] = sides["right"].to(w.device) + torch.einsum("cai,caj->ij", w, w)
    return sides


def mode_summary(g: torch.Tensor | str, name: str, n_models: int, curve: int | None = None) -> dict[str, Any]:
    """Spectrum numbers of one side's Gram (or ``{"skipped": reason}``)."""
    if isinstance(g, str):
        return {"skipped": g}
    lam = torch.linalg.eigvalsh((g + g.T) / 2).flip(0).clamp_min(0).cpu()
    sp = Spectrum(name, (int(g.shape[0]),), n_models, lam)
    evr = sp.explained_variance_ratio
    return {"dim": int(g.shape[0]), "explained_variance_ratio": [float(x) for x in evr[:curve].tolist()],
            "effective_rank": sp.effective_rank, "rank_for": sp.summary(curve=0)["rank_for"]}
