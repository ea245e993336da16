"""Block-diagonal axes: the index arithmetic of grouped convolutions.

A convolution with ``groups=G`` maps input channels ``C_in`` to output
channels ``C_out`` in ``G`` independent blocks; its weight ``W`` has shape
``(C_out, C_in/G, k...)`` and is the compact form of the block-diagonal
matrix::

    W_full[o, i] = W[o, i - b(o) n]   if i // n == b(o)   (n = C_in/G, b(o) = o // (C_out/G))
                 = 0                   otherwise

Both channel groups are nested in one block group ``B`` of size ``G``: a
permutation moves whole blocks by ``pi_B`` (the same for input and output
channels) and permutes units inside each block independently. Under
permutations ``p_out`` (axis 0) and ``p_in`` (axis 1), both respecting the
blocks, ``W_full' = W_full[p_out][:, p_in]``; in the compact form::

    W'[o, j] = W[p_out[o], p_in[b(o) n + j] mod n]

because new input unit ``b(o) n + j`` is old unit ``p_in[b(o) n + j]``, which
lies in the old block of row ``p_out[o]``. A spec records this as
``diagonal=((axis, base, blocks),)`` on the tensor (axis 1, base 0, ``G``).

The canonical view (:func:`wsl.space.axes.to_canonical`) of such a block is the
expanded one (zeros off the diagonal blocks), so dense consumers (features,
weight matching, canonical ordering) see ordinary ``(C_out, C_in)`` unit
axes; the parameter graph uses the compact view and creates only the real
edges (:func:`unit_indices`).
"""

from __future__ import annotations

from typing import Mapping

import torch

from wsl.errors import WslError
from wsl.space.spec import Axis, Block, Segment

Perms = Mapping[int, torch.Tensor]


class PermutationError(WslError):
    """Group permutations that do not fit a weight space's structure."""


def _single(seg: Segment, what: str) -> tuple[int, int]:
    if len(seg) != 1 or seg[0][0] is None:
        raise WslError(f"internal: a diagonal {what} must be a single unit factor, got {seg}")
    g, n = seg[0]
    assert g is not None
    return g, n


def unit_axis(axes: tuple[Segment, ...], axis: int) -> int:
    """Position of tensor axis ``axis``'s (single) unit factor among the canonical unit axes."""
    return sum(1 for seg in axes[:axis] for f in seg if f[0] is not None)


def _block_index(n_base: int, blocks: int, inner: int) -> torch.Tensor:
    """``(n_base, inner)``: the full-group unit ``b(o) inner + j`` of compact entry ``(o, j)``."""
    per = n_base // blocks
    return (torch.arange(n_base) // per).unsqueeze(1) * inner + torch.arange(inner).unsqueeze(0)


def permute_diagonal(t: torch.Tensor, axes: tuple[Axis, ...], diag: tuple[int, int, int], perms: Perms,
                     batched: bool) -> torch.Tensor:
    """Permute diagonal axis ``diag[0]`` of ``t``, whose base axis ``diag[1]`` is already permuted.

    Raises :class:`PermutationError` if the permutations move input and output
    units to different blocks (they must share the block permutation).
    """
    a, base, blocks = diag
    if len(axes[a]) != 1 or len(axes[base]) != 1:
        raise WslError("internal: a diagonal axis and its base axis must have one segment each")
    g_in, inner = _single(axes[a][0], "axis")
    g_b, n_b = _single(axes[base][0], "base axis")
    p_in, p_b = perms.get(g_in), perms.get(g_b)
    if p_in is None and p_b is None:
        return t
    off = 1 if batched else 0
    dev = t.device
    if p_in is None:
        p_in = torch.arange(inner * blocks)
    if p_b is None:
        p_b = torch.arange(n_b)
    p_in, p_b = p_in.to(dev), p_b.to(dev)
    if p_in.shape[-1] != inner * blocks or p_b.shape[-1] != n_b:
        raise PermutationError(f"permutations of lengths {p_in.shape[-1]} and {p_b.shape[-1]} do not fit a "
                               f"block-diagonal weight of {n_b} x {inner * blocks} units")
    full = _block_index(n_b, blocks, inner).to(dev)  # (n_b, inner)
    src = p_in[..., full]  # old full-group input unit of every new compact entry
    old_rows = p_b // (n_b // blocks)
    if not bool((src // inner == old_rows.unsqueeze(-1)).all()):
        raise PermutationError(f"the permutations of groups {g_in} and {g_b} move the blocks of a grouped "
                               f"({blocks} blocks) weight differently; nested groups must share their parent's "
                               "permutation")
    idx = src % inner
    shape = [1] * t.dim()
    shape[base + off], shape[a + off] = n_b, inner
    if idx.dim() == 3:
        shape[0] = int(idx.shape[0])
    elif batched:
        idx = idx.unsqueeze(0)
    idx = idx.reshape(shape) if base < a else idx.transpose(-1, -2).reshape(shape)
    return torch.gather(t, a + off, idx.expand_as(t))


def _steps(block: Block) -> list[tuple[int, int, torch.Tensor, list[int]]]:
    """Per diagonal: (unit dim of the relative axis, full size, index, index view shape) in canonical dims."""
    out = []
    bases = {b for _, b, _ in block.diagonal}
    for a, base, blocks in block.diagonal:
        if a in bases:
            raise WslError("internal: a diagonal axis cannot be the base of another")
        _, inner = _single(block.axes[a], "axis")
        _, n_b = _single(block.axes[base], "base axis")
        ua, ub = unit_axis(block.axes, a), unit_axis(block.axes, base)
        idx = _block_index(n_b, blocks, inner)
        n_units = len(block.compact_unit_shape)
        view = [1] * (n_units + 2)  # (N, *units, F)
        view[1 + ub], view[1 + ua] = n_b, inner
        if ua < ub:
            idx = idx.t()
        out.append((1 + ua, inner * blocks, idx, view))
    return out


def expand(c: torch.Tensor, block: Block) -> torch.Tensor:
    """Compact canonical view ``(N, *compact_units, F)`` -> block-diagonal ``(N, *units, F)`` (zeros off blocks)."""
    for dim, full, idx, view in _steps(block):
        shape = list(c.shape)
        shape[dim] = full
        out = c.new_zeros(shape)
        c = out.scatter_(dim, idx.to(c.device).reshape(view).expand_as(c), c)
    return c


def compress(c: torch.Tensor, block: Block) -> torch.Tensor:
    """Inverse of :func:`expand`: keep the entries inside the diagonal blocks."""
    for dim, _, idx, view in reversed(_steps(block)):
        shape = list(c.shape)
        shape[dim] = view[dim]
        c = torch.gather(c, dim, idx.to(c.device).reshape(view).expand(shape))
    return c


def unit_indices(block: Block) -> list[torch.Tensor]:
    """For every unit axis of the canonical view, the unit of each compact grid element (row-major).

    On a plain block this is the grid's own coordinates; a diagonal axis maps
    its compact index ``j`` in row ``o`` of the base axis to the full-group
    unit ``b(o) n + j``. Used to create only the real edges of a grouped conv.
    """
    shape = block.compact_unit_shape
    grid = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij") if shape else []
    coords = [g.reshape(-1) for g in grid]
    for a, base, blocks in block.diagonal:
        ua, ub = unit_axis(block.axes, a), unit_axis(block.axes, base)
        per = shape[ub] // blocks
        coords[ua] = coords[ub] // per * shape[ua] + coords[ua]
    return coords
