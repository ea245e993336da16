"""Index arithmetic on factored axes: flat permutations and canonical views.

A *canonical view* of a tensor block moves every unit factor to the front, in
axis order, and gathers every non-unit factor (kernel taps, flattened
positions, singleton dims) into one trailing feature dimension::

    conv weight (out, in, kh, kw)        -> (N, out, in, kh*kw)
    linear after flatten (out, C*H*W)    -> (N, out, C, H*W)
    bias (out,)                           -> (N, out, 1)

The map is one ``einops.rearrange`` (a reshape plus a transpose), so it is
exactly invertible: ``from_canonical`` applies the reversed pattern. A block
with a diagonal axis (grouped convolution, :mod:`wsl.space.diagonal`) is
then expanded to its block-diagonal form; :func:`to_compact` stops before
that step (the parameter graph stores only real weights).
All functions take stacked tensors with a leading model dimension ``N``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from einops import rearrange

from wsl.space.diagonal import PermutationError, compress, expand, permute_diagonal
from wsl.space.spec import Axis, Block, Segment

Perms = Mapping[int, torch.Tensor]


def segment_index(seg: Segment, perms: Perms, batch: int | None = None) -> torch.Tensor:
    """Flat source index of a segment under group permutations.

    Returns a LongTensor of shape ``(n,)`` (or ``(batch, n)`` when perms are
    batched) such that ``permuted[..., i, ...] = original[..., idx[i], ...]``.
    """
    idx: torch.Tensor | None = None
    for g, n in seg:
        p = perms.get(g) if g is not None else None
        if p is None:
            p = torch.arange(n)
            if batch is not None:
                p = p.expand(batch, n)
        elif p.shape[-1] != n:
            raise PermutationError(f"permutation of group {g} has length {p.shape[-1]}, the axis needs {n}")
        elif batch is not None and p.dim() == 1:
            p = p.expand(batch, n)
        if idx is None:
            idx = p.clone()
        else:
            idx = (idx.unsqueeze(-1) * n + p.unsqueeze(-2)).flatten(-2)
    assert idx is not None
    return idx


def axis_index(axis: Axis, perms: Perms, batch: int | None = None) -> torch.Tensor:
    """Flat source index of a whole (possibly multi-segment) axis."""
    out = []
    offset = 0
    for seg in axis:
        out.append(segment_index(seg, perms, batch) + offset)
        offset += math.prod(f[1] for f in seg)
    return torch.cat(out, dim=-1)


def axis_needs_permute(axis: Axis, perms: Perms) -> bool:
    return any(f[0] is not None and f[0] in perms for seg in axis for f in seg)


def permute_tensor(t: torch.Tensor, axes: tuple[Axis, ...], perms: Perms, batched: bool,
                   diagonal: tuple[tuple[int, int, int], ...] = ()) -> torch.Tensor:
    """Apply group permutations to every axis of ``t``.

    With ``batched`` the first dim of ``t`` indexes models and ``perms`` may
    hold one permutation per model (shape ``(N, n)``). Diagonal axes (see
    :mod:`wsl.space.diagonal`) are permuted last, relative to their base axis.
    """
    off = 1 if batched else 0
    n = t.shape[0] if batched else None
    relative = {d[0] for d in diagonal}
    for a, axis in enumerate(axes):
        if a in relative or not axis_needs_permute(axis, perms):
            continue
        dim = a + off
        idx = axis_index(axis, perms, n if batched else None)
        if idx.dim() == 1:
            t = t.index_select(dim, idx.to(t.device))
        else:
            shape = [1] * t.dim()
            shape[0], shape[dim] = idx.shape
            t = torch.gather(t, dim, idx.to(t.device).view(shape).expand_as(t))
    for d in diagonal:
        t = permute_diagonal(t, axes, d, perms, batched)
    return t


def _patterns(block: Block) -> tuple[str, str, dict[str, int]]:
    """einops patterns of a block and of its canonical view, and the factor sizes.

    A conv weight block with factors ``((g1, 16),), ((g0, 8),), ((None, 3),), ((None, 3),)`` gives
    ``"n (f0) (f1) (f2) (f3)"`` and ``"n f0 f1 (f2 f3)"``.
    """
    sizes: dict[str, int] = {}
    axes, units, fixed = [], [], []
    for seg in block.axes:
        names = []
        for g, n in seg:
            name = f"f{len(sizes)}"
            sizes[name] = n
            names.append(name)
            (units if g is not None else fixed).append(name)
        axes.append(f"({' '.join(names)})")
    return " ".join(["n", *axes]), " ".join(["n", *units, f"({' '.join(fixed)})"]), sizes


def slice_block(t: torch.Tensor, block: Block) -> torch.Tensor:
    """``t[:, block]`` for stacked ``t`` of shape ``(N, *tensor_shape)``."""
    for a, (s, e) in enumerate(block.slices):
        if s != 0 or e != t.shape[a + 1]:
            t = t.narrow(a + 1, s, e - s)
    return t


def to_compact(t: torch.Tensor, block: Block) -> torch.Tensor:
    """Stacked full tensor ``(N, *shape)`` -> ``(N, *compact_units, F)`` (diagonal axes not expanded)."""
    tensor, canonical, sizes = _patterns(block)
    return rearrange(slice_block(t, block), f"{tensor} -> {canonical}", **sizes)


def from_compact(c: torch.Tensor, block: Block) -> torch.Tensor:
    """``(N, *compact_units, F)`` -> block tensor ``(N, *block.shape)`` (inverse of :func:`to_compact`)."""
    tensor, canonical, sizes = _patterns(block)
    return rearrange(c, f"{canonical} -> {tensor}", **sizes)


def to_canonical(t: torch.Tensor, block: Block) -> torch.Tensor:
    """Stacked full tensor ``(N, *shape)`` -> canonical block ``(N, *units, F)``."""
    c = to_compact(t, block)
    return expand(c, block) if block.diagonal else c


def from_canonical(c: torch.Tensor, block: Block) -> torch.Tensor:
    """Canonical block ``(N, *units, F)`` -> block tensor ``(N, *block.shape)``.

    Entries of a block-diagonal view outside its diagonal blocks are dropped.
    """
    tensor, canonical, sizes = _patterns(block)
    if block.diagonal:
        c = compress(c, block)
    return rearrange(c, f"{canonical} -> {tensor}", **sizes)


def canonical_flat_index(block: Block, tensor_shape: tuple[int, ...]) -> torch.Tensor:
    """For each element of the compact canonical view (row-major), its flat index in the tensor.

    Used to build gather maps once per architecture (graph construction).
    Equal to the canonical view unless the block has a diagonal axis.
    """
    flat = torch.arange(math.prod(tensor_shape)).view(1, *tensor_shape)
    return to_compact(flat, block).reshape(-1)
